"""`python -m pipelines.run [options]`: the job entrypoint, the same as `cutmix-study run [options]`."""

from pipelines.run_stage import entrypoint

if __name__ == "__main__":
    entrypoint()
