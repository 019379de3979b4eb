"""Type stub for the compiled encoder of the operation log's records (``_records.pyx``);
mirrors ``mqttd.store._records_py.encode_py``."""

__all__ = ["encode"]

def encode(ops: list[tuple[object, ...]]) -> bytes: ...
