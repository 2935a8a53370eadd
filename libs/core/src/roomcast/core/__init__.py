"""roomcast's pure core: everything that can be decided without I/O.

Room names and subjects (`rooms`), the blob format (`blob`), the per-room merge window (`merge`),
Kafka positions for commits and duplicate dropping (`positions`), WebSocket frame building
(`frames`) and the client protocol (`protocol`). Bytes and time in, bytes and decisions out.
"""
