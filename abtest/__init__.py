"""ab-router's shared package: data, models' common serving core, simulator, local stack and the CLI."""
