"""Benchmarks (not tests): `abtest bench models|router|store` print figures and write them under results/."""
