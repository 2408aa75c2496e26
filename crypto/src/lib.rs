//! cutls-crypto: the streaming TLS record engine.
