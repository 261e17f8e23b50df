"""The cloud hub: judges what the edge escalates, stores events, serves the web API."""
