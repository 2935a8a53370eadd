"""roomcast.cli"""
