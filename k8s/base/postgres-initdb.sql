-- Run once by the postgres image's entrypoint on an empty data directory (/docker-entrypoint-initdb.d), as
-- POSTGRES_USER: the Optuna study's own database beside MLflow's (`mlflow`, POSTGRES_DB), so that the two
-- schemas and their migrations never meet. The Ray head reaches it with $OPTUNA_STORAGE (Secret cutmix-optuna).
-- On a data directory initialised before this script existed, run it by hand once (k8s/README.md, step 5).
CREATE DATABASE optuna;
