"""`python -m model_b --port N`: serve model_b (what its container runs)."""

from recsys.signals import ProcessSignals

if __name__ == "__main__":
    signals = ProcessSignals.install("model_b")  # before the heavy imports: no signal kills it while it starts
    from model_b import model
    from recsys.server import run

    run(model, signals=signals)
