"""The recommender library: data, the servable model, training, offline evaluation, the model REST contract."""
