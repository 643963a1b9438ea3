"""`python -m model_a --port N`: serve model_a (what its container runs)."""

from model_a import model
from recsys.server import run

if __name__ == "__main__":
    run(model)
