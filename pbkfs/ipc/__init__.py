"""Frames between the mount process and its workers, and the router (layer 8 of 11).

Owns the msgspec protocol (requests, replies, `WorkerSpec`) and the
frontend's side of the worker processes: starting and restarting them,
routing by inode, matching replies by request id, and the watchdog that
replaces a worker that stops answering. `protocol` imports only the view
layer's `SourceSpec` and is what workers import; `router` uses trio and may
import diff, view and below, never fs, mount or cli.
"""
