"""roomcast.devstack"""
