-- Schema version 7: a profile's code-signing certificate (PEM) and the name its devices know it by.
ALTER TABLE profiles ADD COLUMN signing_cert TEXT;
ALTER TABLE profiles ADD COLUMN signing_cert_name TEXT;
