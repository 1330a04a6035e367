-- Schema version 8: 1 when AWS IoT OTA job documents for the profile's devices also offer HTTP.
ALTER TABLE profiles ADD COLUMN aws_http BIGINT NOT NULL DEFAULT 0;
