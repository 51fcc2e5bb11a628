"""lit_forecast: NYC taxi demand forecasting with Lightning, scaled out on Ray Train."""

__version__ = "0.1.0"
