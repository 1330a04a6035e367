-- Schema version 10: LwM2M DTLS pre-shared keys. The key is kept as given (hex): the server needs
-- it in the clear for the handshake, as every PSK server does.
CREATE TABLE lwm2m_psk (
    device_pk BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    identity TEXT NOT NULL UNIQUE,
    psk_key TEXT NOT NULL
);
