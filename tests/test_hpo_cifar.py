import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO
from test_utils_cifar import DEMO, write_cifar100

import hpo_cifar
from utils.cli import UserError

# The bundled 10-class photos, and a search space of small networks (depth <= 2, width 16): seconds per trial on 2 cores
FAST = ["--dataset", "imagefolder", "--data-root", str(DEMO), "--max-depth", "2", "--max-width", "16", "--threads", "2", "--epochs", "1"]
# A configuration known to train on the demo data (SGD at 0.05 reached test top-1 0.38-0.41 with width 32, 15 epochs)
GOOD = {
    "lr": 0.05,
    "weight_decay": 5e-4,
    "batch_size": 32,
    "optimizer": "sgd",
    "depth": 2,
    "width": 16,
    "dropout": 0.1,
    "label_smoothing": 0.0,
}


def parse(*flags: str) -> argparse.Namespace:
    return hpo_cifar.get_args_parser().parse_args(list(flags))


def run(out: Path, *flags: str) -> dict:
    return hpo_cifar.main(parse(*FAST, "--out", str(out), *flags))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


######################################################################################################################
# Units


def test_small_cnn_family():
    model = hpo_cifar.SmallCNN(100, depth=3, width=16, dropout=0.2, norm="group", activation="gelu", image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    convs = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [16, 16, 32, 32, 64, 64] and all(conv.bias is None for conv in convs)
    assert any(isinstance(module, torch.nn.GroupNorm) for module in model.modules())
    assert hpo_cifar.parameter_count(model) == sum(p.numel() for p in model.parameters()) > 0
    plain = hpo_cifar.SmallCNN(10, depth=5, width=16, dropout=0.0, norm="none", activation="relu", image_size=32)
    assert plain(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # 5 stages: 32 -> 1 px, still valid
    with pytest.raises(ValueError, match="depth 6 halves a 32 px image to nothing"):
        hpo_cifar.SmallCNN(10, depth=6, width=16, dropout=0.0, norm="batch", activation="relu", image_size=32)


def test_trial_shares_pruners_seeds_and_redaction():
    assert hpo_cifar.trial_shares(7, 3) == [3, 2, 2] and sum(hpo_cifar.trial_shares(5, 8)) == 5
    assert isinstance(hpo_cifar.build_pruner("median", 5), optuna.pruners.MedianPruner)
    hyperband = hpo_cifar.build_pruner("hyperband", 9)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9
    assert hpo_cifar.worker_seed(3, 0, 0) == 3
    assert len({hpo_cifar.worker_seed(3, 1, 0), hpo_cifar.worker_seed(3, 2, 0), hpo_cifar.worker_seed(3, 0, 5)}) == 3
    assert hpo_cifar.redact("postgresql://hpo:s3cret@db:5432/optuna") == "postgresql://hpo:***@db:5432/optuna"


def test_validation_and_test_never_overlap(tmp_path):
    write_cifar100(tmp_path)
    data = hpo_cifar.load_data(parse("--dataset", "cifar100", "--data-root", str(tmp_path), "--val-fraction", "0.2"))
    train, val = set(data.train_index.tolist()), set(data.val_index.tolist())
    assert not train & val and train | val == set(range(100)) and len(val) == 20
    assert torch.bincount(data.train.labels[data.val_index]).tolist() == [2] * 10  # stratified
    rows = lambda images: {bytes(row) for row in images.flatten(1).numpy()}  # noqa: E731
    assert not rows(data.test.images) & rows(data.train.images[data.val_index])
    assert not rows(data.test.images) & rows(data.train.images[data.train_index])
    assert data.mean == hpo_cifar.CIFAR_STATS["cifar100"][0]


######################################################################################################################
# Bad input: one line, exit 1, and nothing written


def test_n_trials_zero_is_one_line_and_exit_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*FAST, "--n-trials", "0")
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--n-trials" in error and "at least 1" in error


def test_missing_and_partial_dataset_write_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"cifar100 not found in .*cifar-100-python; add --download"):
        hpo_cifar.main(parse("--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--out", str(out)))
    (write_cifar100(tmp_path / "data") / "test").unlink()  # an interrupted extraction
    with pytest.raises(UserError, match="lacks test"):
        hpo_cifar.main(parse("--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--out", str(out)))
    assert not out.exists()


def test_unreachable_storage_and_missing_study_write_nothing(tmp_path):
    out = tmp_path / "out"
    url = f"postgresql://hpo:s3cret@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    with pytest.raises(UserError, match=r"cannot reach storage postgresql://hpo:\*\*\*@127.0.0.1") as error:
        run(out, "--storage", url)
    assert "s3cret" not in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="--resume: no study storage at"):
        run(out, "--resume")
    with pytest.raises(UserError, match="--enqueue: unknown parameter"):
        run(out, "--enqueue", '{"learning_rate": 0.1}')
    assert not out.exists()


def test_resume_refuses_another_setup(tmp_path):
    storage = hpo_cifar.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    args = parse(*FAST, "--study-name", "s")
    setup = hpo_cifar.setup_of(hpo_cifar.load_data(args), args)
    hpo_cifar.prepare_study(storage, args, setup)
    with pytest.raises(UserError, match="exists already; add --resume"):
        hpo_cifar.prepare_study(storage, args, setup)
    with pytest.raises(UserError, match=r"another setup \(epochs 1 -> 3\)"):
        hpo_cifar.main(parse(*FAST, "--study-name", "s", "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--resume", "--epochs", "3"))


def test_cli_error_line_and_help():
    done = subprocess.run(
        [sys.executable, "hpo_cifar.py", "--dataset", "cifar10", "--data-root", "/nonexistent"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: cifar10 not found")
    helped = subprocess.run([sys.executable, "hpo_cifar.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert helped.returncode == 0
    for text in ("--download", "cifar-100-python", "--storage postgresql://", "--resume --final-epochs 0", "optuna-dashboard"):
        assert text in helped.stdout, text


######################################################################################################################
# End to end


@pytest.mark.slow
def test_three_trial_search_on_cifar100_fixture_writes_every_artefact(tmp_path, capsys):
    write_cifar100(tmp_path / "data")
    out = tmp_path / "out"
    flags = ["--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--max-depth", "2", "--max-width", "16"]
    results = hpo_cifar.main(parse(*flags, "--threads", "2", "--epochs", "1", "--n-trials", "3", "--final-epochs", "1", "--out", str(out)))
    names = (
        "study.db",
        "results.json",
        "report.md",
        "model.pt",
        "optimization_history.png",
        "param_importances.png",
        "intermediate_values.png",
    )
    for name in names:
        assert (out / name).stat().st_size > 0, name
    assert results["trials_total"] == 3 and results["complete"] == 3 and results["plots_skipped"] == {}
    assert json.loads((out / "results.json").read_text())["best_params"] == results["best_params"]
    study = optuna.load_study(study_name="hpo-cifar100", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and all(len(trial.intermediate_values) == 1 for trial in study.trials)
    final = results["final"]
    assert 0 <= final["top1"] <= final["top5"] <= 1 and final["test_images"] == 100 and final["train_images"] == 100
    saved = torch.load(out / "model.pt", weights_only=False)
    config = saved["model_config"]
    model = hpo_cifar.SmallCNN(config["classes"], config["depth"], config["width"], 0.0, config["norm"], config["activation"], 32)
    model.load_state_dict(saved["model"])
    assert saved["params"] == results["best_params"] and hpo_cifar.parameter_count(model) == final["parameters"]
    report = (out / "report.md").read_text()
    for text in (
        "## Search space",
        "## Trials",
        "## Best parameters",
        "test top-1",
        "0 pruned",
        "Wall time",
        "Machine",
        "optimization_history.png",
    ):
        assert text in report, text
    printed = capsys.readouterr().out
    assert printed.count("| COMPLETE |") == 3 and "best: trial" in printed and "final model (1 epochs" in printed


@pytest.mark.slow
def test_invalid_network_is_pruned_and_the_study_goes_on(tmp_path):
    results = run(tmp_path, "--n-trials", "2", "--max-depth", "6", "--enqueue", '{"depth": 6}', "--final-epochs", "0")
    first, second = results["trials"]
    assert first["state"] == "PRUNED" and first["params"]["depth"] == 6 and "invalid network: depth 6" in first["note"]
    assert second["state"] == "COMPLETE" and results["pruned"] == 1 and results["final"] is None
    assert "invalid network" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_resume_adds_trials_to_the_same_study(tmp_path):
    run(tmp_path, "--n-trials", "1", "--final-epochs", "0")
    with pytest.raises(UserError, match="exists already; add --resume"):
        run(tmp_path, "--n-trials", "1", "--final-epochs", "0")
    results = run(tmp_path, "--n-trials", "2", "--final-epochs", "0", "--resume")
    assert results["trials_total"] == 3 and results["trials_this_run"] == 2
    assert [row["number"] for row in results["trials"]] == [0, 1, 2]
    study = optuna.load_study(study_name="hpo-imagefolder", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 3 and len({tuple(sorted(trial.params.items())) for trial in study.trials}) == 3


@pytest.mark.slow
def test_two_workers_share_one_journal_file(tmp_path):
    results = run(tmp_path, "--n-trials", "3", "--n-workers", "2", "--final-epochs", "0")
    assert (tmp_path / "study.journal").is_file() and not (tmp_path / "study.db").exists()
    study = optuna.load_study(study_name="hpo-imagefolder", storage=hpo_cifar.open_storage(str(tmp_path / "study.journal")))
    numbers = [trial.number for trial in study.trials]
    assert sorted(numbers) == [0, 1, 2] and results["trials_total"] == 3
    assert len({trial.user_attrs["worker"] for trial in study.trials}) == 2  # two processes did the work


@pytest.mark.slow
def test_final_model_beats_chance_on_the_bundled_photos(tmp_path):
    results = run(tmp_path, "--n-trials", "1", "--enqueue", json.dumps(GOOD), "--final-epochs", "15")
    final = results["final"]
    assert results["best_params"] == GOOD and final["chance_top1"] == pytest.approx(0.1)
    # 100 test images, 10 classes: 20 right by chance has p < 0.003; measured 0.3-0.4
    assert final["top1"] >= 0.2 and final["top5"] >= 0.6, final


######################################################################################################################
# PostgreSQL: a real server in a temporary folder, workers on "two machines"


def postgres_binaries() -> tuple[str, str] | None:
    for folder in [None, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        initdb, pg_ctl = (
            shutil.which("initdb", path=str(folder) if folder else None),
            shutil.which("pg_ctl", path=str(folder) if folder else None),
        )
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


@pytest.fixture
def postgres_url():
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("needs PostgreSQL server binaries (initdb, pg_ctl): not found (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="needs psycopg, the driver SQLAlchemy 2.1 uses for postgresql:// (pip install 'psycopg[binary]')")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="hpo-postgres-"))  # not under pytest's private tmp: the server's user must enter it
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres account
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no 'postgres' account to run the server as")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    initdb, pg_ctl = binaries
    port = free_port()
    data = folder / "data"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"], check=True, capture_output=True
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_workers_on_a_postgresql_study(tmp_path, postgres_url):
    # machine A: creates the study, 2 processes
    first = run(
        tmp_path / "a", "--storage", postgres_url, "--study-name", "shared", "--n-trials", "2", "--n-workers", "2", "--final-epochs", "0"
    )
    # machine B: joins it (its own --out), adds a trial, and trains the final model of the whole study
    second = run(tmp_path / "b", "--storage", postgres_url, "--study-name", "shared", "--n-trials", "1", "--resume", "--final-epochs", "1")
    assert first["trials_total"] == 2 and second["trials_total"] == 3 and second["trials_this_run"] == 1
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert sorted(trial.number for trial in study.trials) == [0, 1, 2]
    assert len({trial.user_attrs["worker"] for trial in study.trials}) == 3
    assert second["final"] is not None and second["storage"] == postgres_url
    assert not (tmp_path / "a" / "study.db").exists()


######################################################################################################################
# GPU


@pytest.mark.cuda
def test_search_on_the_gpu_keeps_the_data_there(tmp_path):
    args = parse(*FAST, "--device", "cuda", "--out", str(tmp_path))
    objective = hpo_cifar.Objective(hpo_cifar.load_data(args), args, torch.device("cuda"))
    assert objective.train_set.images.is_cuda and objective.train_set.images.dtype == torch.uint8
    results = run(tmp_path, "--device", "cuda", "--n-trials", "2", "--final-epochs", "1")
    assert results["device"] == torch.cuda.get_device_name() and results["complete"] + results["pruned"] == 2
    assert 0 <= results["final"]["top1"] <= 1
