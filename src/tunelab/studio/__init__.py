"""The studio: FastAPI app, SQLite job queue and bundled page over the CLI's config schema and run folders."""
