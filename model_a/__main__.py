"""`python -m model_a --port N`: serve model_a (what its container runs)."""

from abtest.model_server import run

if __name__ == "__main__":
    run("model_a")
