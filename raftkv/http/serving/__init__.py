"""What a worker's app runs on: its settings, the IPC client to the Raft process,
uvicorn's protocol with connection limits and HTTPS (which hands the key routes to the
hot key path, ``routes/hot_keys.py``), and HTTP to other nodes. The process entry point
that puts them together with the app is ``raftkv.http.worker``."""
