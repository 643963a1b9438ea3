"""The A/B router: assigns each user a variant, proxies to that variant's model server, logs outcomes."""
