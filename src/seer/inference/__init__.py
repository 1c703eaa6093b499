"""Using a trained run: loading it, generation (plain and explained), monitors, the
explainer facade, export and the OpenAI-compatible server."""
