"""Online forecasts: request checks (api), the model of a replica (engine), the Ray Serve deployment (app)."""
