"""roomcast.bench: the one way roomcast's speed is measured."""
