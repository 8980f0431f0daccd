"""The wsgate proxy: authenticates WebSocket handshakes and relays the upgraded bytes."""
