# `flask run` from the repo root serves the shipped Mask R-CNN (mask_api.create_app); python-dotenv reads this file.
FLASK_APP=mask_api
FLASK_RUN_HOST=127.0.0.1
FLASK_RUN_PORT=5000
