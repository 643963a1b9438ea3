"""model_b: a Surprise recommender (SVD) behind the shared model REST contract."""
