"""The durable store: sessions, their queues and retained messages on disk (EMQX's
emqx_persistent_session_ds, mosquitto's persistence), behind one backend Protocol."""
