use super::*;

fn h(text: &str) -> Vec<u8> {
    hex::decode(text.replace(' ', "")).unwrap_or_default()
}

/// The exact bytes of the reference (serde_cbor 0.11, packed).
#[test]
fn packed_cbor_matches_the_reference_bytes() {
    let first = decode(
        Encoding::Cbor,
        &h("a4 00 45 312e302e30 01 19 0200 02 f6 03 f6"),
    );
    assert_eq!(
        first,
        Ok(Status {
            version: b"1.0.0".to_vec(),
            mtu: Some(512),
            correlation_id: None,
            update: None
        })
    );
    let resumed = decode(
        Encoding::Cbor,
        &h("a4 00 45 312e302e30 01 19 0200 02 f6 03 a2 00 45 322e302e30 01 19 0200"),
    );
    assert_eq!(
        resumed.map(|s| s.update),
        Ok(Some(UpdateStatus {
            version: b"2.0.0".to_vec(),
            offset: 512
        }))
    );
    let named = decode(
        Encoding::Cbor,
        &h(
            "a4 67 76657273696f6e 45 312e302e30 63 6d7475 19 0200 6e 636f7272656c6174696f6e5f6964 f6 66 757064617465 f6",
        ),
    );
    assert_eq!(named.map(|s| s.mtu), Ok(Some(512)));

    let sync = Command::Sync {
        version: b"2.0.0".to_vec(),
        correlation_id: None,
        poll: Some(300),
    };
    assert_eq!(
        encode(Encoding::Cbor, &sync),
        h("a1 01 a3 00 45 322e302e30 01 f6 02 19 012c")
    );
    let wait = Command::Wait {
        correlation_id: None,
        poll: Some(60),
    };
    assert_eq!(encode(Encoding::Cbor, &wait), h("a1 00 a2 00 f6 01 18 3c"));
    let write = Command::Write {
        version: b"2.0.0".to_vec(),
        correlation_id: None,
        offset: 0,
        data: vec![7; 512],
    };
    let mut expected = h("a1 02 a4 00 45 322e302e30 01 f6 02 00 03 59 0200");
    expected.extend_from_slice(&[7; 512]);
    assert_eq!(encode(Encoding::Cbor, &write), expected);
    let swap = Command::Swap {
        version: b"2.0.0".to_vec(),
        correlation_id: None,
        checksum: vec![9; 32],
    };
    let mut expected = h("a1 03 a3 00 45 322e302e30 01 f6 02 58 20");
    expected.extend_from_slice(&[9; 32]);
    assert_eq!(encode(Encoding::Cbor, &swap), expected);
}

#[test]
fn json_statuses_take_strings_bytes_and_the_status_alias() {
    let status = decode(
        Encoding::Json,
        br#"{"version":"1.0.0","mtu":512,"status":{"version":[50,46,48],"offset":64}}"#,
    );
    assert_eq!(
        status,
        Ok(Status {
            version: b"1.0.0".to_vec(),
            mtu: Some(512),
            correlation_id: None,
            update: Some(UpdateStatus {
                version: b"2.0".to_vec(),
                offset: 64
            })
        })
    );
    assert_eq!(Encoding::of(None, b"  {\"version\":\"1\"}"), Encoding::Json);
    assert_eq!(Encoding::of(None, &[0xa4]), Encoding::Cbor);
    assert_eq!(Encoding::of(Some("application/cbor"), b"{"), Encoding::Cbor);
}

/// Every truncation and every single-bit flip of valid Statuses (packed, named, JSON) decodes
/// or fails cleanly: no panic, whatever a device sends.
#[test]
fn every_truncation_and_bit_flip_of_a_status_is_handled() {
    let seeds = [
        (
            Encoding::Cbor,
            h("a4 00 45 312e302e30 01 19 0200 02 f6 03 a2 00 45 322e302e30 01 19 0200"),
        ),
        (
            Encoding::Cbor,
            h(
                "a4 67 76657273696f6e 45 312e302e30 63 6d7475 19 0200 6e 636f7272656c6174696f6e5f6964 f6 66 757064617465 f6",
            ),
        ),
        (
            Encoding::Json,
            br#"{"version":"1.0.0","mtu":512,"update":{"version":"2.0.0","offset":512}}"#.to_vec(),
        ),
    ];
    let mut cases = 0;
    for (encoding, seed) in seeds {
        for len in 0..=seed.len() {
            let _ = decode(encoding, &seed[..len]);
            cases += 1;
        }
        for byte in 0..seed.len() {
            for bit in 0..8 {
                let mut mutated = seed.clone();
                mutated[byte] ^= 1 << bit;
                let _ = decode(encoding, &mutated);
                cases += 1;
            }
        }
    }
    assert!(cases > 1000);
}

#[test]
fn malformed_statuses_are_errors_not_panics() {
    for body in [
        &b""[..],
        &[0xff],
        &[0xa1, 0x00],
        &[0xa1, 0x00, 0x18],
        &h("a2 00 45 312e302e30 01 1b ffffffffffffffff")[..],
        b"[1,2]",
    ] {
        assert!(decode(Encoding::Cbor, body).is_err(), "{body:?}");
    }
    for body in [
        &b"{}"[..],
        b"{\"version\":1}",
        b"{\"version\":\"1\",\"mtu\":-1}",
        b"{\"version\":\"1\",\"update\":{\"version\":\"2\"}}",
        b"nope",
    ] {
        assert!(
            decode(Encoding::Json, body).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn the_device_side_round_trips_with_the_server_side() {
    let status = Status {
        version: b"1.0.0".to_vec(),
        mtu: Some(512),
        correlation_id: None,
        update: Some(UpdateStatus {
            version: b"2.0.0".to_vec(),
            offset: 512,
        }),
    };
    let bytes = encode_status(&status);
    assert_eq!(
        bytes,
        h("a4 00 45 312e302e30 01 19 0200 02 f6 03 a2 00 45 322e302e30 01 19 0200")
    );
    assert_eq!(decode(Encoding::Cbor, &bytes), Ok(status));
    for command in [
        Command::Wait {
            correlation_id: Some(3),
            poll: None,
        },
        Command::Sync {
            version: b"1".to_vec(),
            correlation_id: None,
            poll: Some(300),
        },
        Command::Write {
            version: b"2".to_vec(),
            correlation_id: None,
            offset: 1024,
            data: vec![1, 2, 3],
        },
        Command::Swap {
            version: b"2".to_vec(),
            correlation_id: Some(u32::MAX),
            checksum: vec![0; 32],
        },
    ] {
        assert_eq!(
            decode_command(&encode(Encoding::Cbor, &command)),
            Ok(command)
        );
    }
    for junk in [
        &b""[..],
        &h("a0"),
        &h("a1 07 a0"),
        &h("a1 02 a1 00 45 322e302e30"),
        &h("80"),
    ] {
        assert!(decode_command(junk).is_err(), "{junk:?}");
    }
}
