"""The bundled sample pair (see SOURCE.md)."""
