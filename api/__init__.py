"""The HTTP facade: FastAPI app, auth, errors, and one router per resource."""
