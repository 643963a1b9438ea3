"""`python -m model_b --port N`: serve model_b (what its container runs)."""

from model_b import model
from recsys.server import run

if __name__ == "__main__":
    run(model)
