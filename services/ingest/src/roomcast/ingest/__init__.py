"""roomcast.ingest"""
