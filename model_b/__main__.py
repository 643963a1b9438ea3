"""`python -m model_b --port N`: serve model_b (what its container runs)."""

from abtest.model_server import run

if __name__ == "__main__":
    run("model_b")
