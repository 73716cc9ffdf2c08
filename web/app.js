// Live view of web_server.py's Server-Sent Events: one card per camera, the frame with its boxes, FPS, latency, a chart.
"use strict";

const HISTORY = 120; // points in each camera's chart
const MAIN_COLOR = "#39ff14", OTHER_COLOR = "#00bfff", HELD_COLOR = "#ffb000";
const cameras = new Map(); // camera id -> {card, view, chart, stats, image, arrivals, points}

function card(id) {
  if (cameras.has(id)) return cameras.get(id);
  const node = document.getElementById("camera-template").content.firstElementChild.cloneNode(true);
  node.dataset.camera = id;
  node.querySelector("h2").textContent = id;
  document.getElementById("cameras").appendChild(node);
  const camera = {
    card: node, view: node.querySelector(".view"), chart: node.querySelector(".chart"),
    stats: node.querySelector(".stats"), image: null, last: null, arrivals: [], points: [],
  };
  cameras.set(id, camera);
  return camera;
}

function drawBox(context, box, scale, color, width, text) {
  const [x1, y1, x2, y2] = box.map((v) => Math.round(v * scale) + 0.5); // on pixel centres: crisp, unblended lines
  context.strokeStyle = color;
  context.lineWidth = width;
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  if (text) {
    context.fillStyle = color;
    context.font = "11px sans-serif";
    context.fillText(text, x1 + 2, Math.max(10, y1 - 3));
  }
}

function drawView(camera, message) {
  const view = camera.view;
  const scale = view.width / message.width;
  view.height = Math.round(message.height * scale);
  const context = view.getContext("2d");
  if (camera.image) context.drawImage(camera.image, 0, 0, view.width, view.height);
  else { context.fillStyle = "#333"; context.fillRect(0, 0, view.width, view.height); }
  const main = message.main_person;
  const isMain = (box) => main && !main.held && box.every((v, i) => v === main.box[i]);
  for (const detection of message.detections) {
    if (isMain(detection.box)) continue; // drawn below, highlighted
    drawBox(context, detection.box, scale, OTHER_COLOR, 1, `${detection.label} ${detection.score.toFixed(2)}`);
  }
  if (main) drawBox(context, main.box, scale, main.held ? HELD_COLOR : MAIN_COLOR, 3, main.held ? "main (held)" : `main ${main.score.toFixed(2)}`);
}

function drawChart(camera) {
  const chart = camera.chart, context = chart.getContext("2d");
  context.fillStyle = "#222";
  context.fillRect(0, 0, chart.width, chart.height);
  const points = camera.points;
  if (points.length < 2) return;
  const top = Math.max(50, ...points.map((p) => p.latency));
  const people = Math.max(1, ...points.map((p) => p.people));
  const line = (value, max, color) => {
    context.strokeStyle = color;
    context.lineWidth = 1.5;
    context.beginPath();
    points.forEach((p, i) => {
      const x = (i / (HISTORY - 1)) * chart.width, y = chart.height - 2 - (value(p) / max) * (chart.height - 12);
      if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
  };
  line((p) => p.latency, top, HELD_COLOR);
  line((p) => p.people, people, OTHER_COLOR);
  context.fillStyle = "#aaa";
  context.font = "10px sans-serif";
  context.fillText(`${top.toFixed(0)} ms`, 2, 10);
}

function onDetections(message) {
  const camera = card(message.camera);
  const now = Date.now();
  const latency = now - message.capture_ts * 1000; // capture -> browser, both clocks on this machine
  camera.arrivals.push(now);
  while (camera.arrivals.length && now - camera.arrivals[0] > 2000) camera.arrivals.shift();
  const fps = camera.arrivals.length > 1 ? (camera.arrivals.length - 1) / ((now - camera.arrivals[0]) / 1000) : 0;
  const people = message.detections.filter((d) => d.label === "person").length;
  camera.points.push({ latency, people });
  if (camera.points.length > HISTORY) camera.points.shift();
  Object.assign(camera.card.dataset, { frame: message.frame, people, main: message.main_person ? 1 : 0 });
  camera.stats.textContent = `frame ${message.frame} · ${fps.toFixed(1)} FPS · latency ${latency.toFixed(0)} ms ` +
    `· inference ${message.inference_ms.toFixed(1)} ms · ${people} people · ${message.dropped} dropped`;
  camera.last = message;
  drawView(camera, message);
  drawChart(camera);
}

function onFrame(data) {
  const image = new Image();
  image.onload = () => {
    const camera = card(data.camera);
    camera.image = image;
    if (camera.last) drawView(camera, camera.last); // a frame that decoded after its boxes arrived
  };
  image.src = `data:image/jpeg;base64,${data.jpeg}`;
}

const events = new EventSource("/api/stream");
const status = document.getElementById("status");
events.onopen = () => { status.textContent = "live"; };
events.onerror = () => { status.textContent = "reconnecting…"; };
events.addEventListener("detections", (event) => onDetections(JSON.parse(event.data)));
events.addEventListener("frame", (event) => onFrame(JSON.parse(event.data)));
