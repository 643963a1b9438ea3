"""`python -m model_a --port N`: serve model_a (what its container runs)."""

from recsys.signals import ProcessSignals

if __name__ == "__main__":
    signals = ProcessSignals.install("model_a")  # before the heavy imports: no signal kills it while it starts
    from model_a import model
    from recsys.server import run

    run(model, signals=signals)
