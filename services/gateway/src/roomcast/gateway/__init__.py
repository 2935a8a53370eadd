"""roomcast.gateway"""
