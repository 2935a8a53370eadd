"""roomcast.client"""
