"""The model this service serves: its files, loading, and the /predict and /model routes."""
