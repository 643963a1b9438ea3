"""model_a: a scikit-learn recommender (PureSVD) behind the shared model REST contract."""
