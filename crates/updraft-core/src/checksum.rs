//! Checksums computed in one pass while an artifact streams in: ThingsBoard's set (MD5, SHA-256,
//! SHA-384, SHA-512, CRC32, MURMUR3_32, MURMUR3_128) plus SHA-1 for hawkBit DDI. Values are
//! lowercase hex exactly as Guava's `HashCode.toString()` prints them, which is what ThingsBoard
//! devices compare against: digests as usual, 32-bit values little-endian, MURMUR3_128 as h1 then
//! h2, each little-endian.

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A checksum algorithm an uploader may name and a device may be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Crc32,
    Murmur3_32,
    Murmur3_128,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 8] = [
        ChecksumAlgorithm::Md5,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha384,
        ChecksumAlgorithm::Sha512,
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Murmur3_32,
        ChecksumAlgorithm::Murmur3_128,
    ];

    /// ThingsBoard's spelling (`SHA256`, `MURMUR3_32`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Md5 => "MD5",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
            ChecksumAlgorithm::Sha384 => "SHA384",
            ChecksumAlgorithm::Sha512 => "SHA512",
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Murmur3_32 => "MURMUR3_32",
            ChecksumAlgorithm::Murmur3_128 => "MURMUR3_128",
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = String;
    /// Accepts ThingsBoard's names in any case, with or without a dash (`sha-256`).
    fn from_str(s: &str) -> Result<Self, String> {
        let wanted = s.to_ascii_uppercase().replace('-', "");
        ChecksumAlgorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str().replace('_', "") == wanted.replace('_', ""))
            .ok_or_else(|| {
                format!(
                    "unknown checksum algorithm {s:?}: use one of MD5, SHA1, SHA256, SHA384, SHA512, CRC32, MURMUR3_32, MURMUR3_128"
                )
            })
    }
}

/// Every checksum of one artifact, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
    pub sha384: String,
    pub sha512: String,
    pub crc32: String,
    pub murmur3_32: String,
    pub murmur3_128: String,
}

impl Checksums {
    pub fn get(&self, algorithm: ChecksumAlgorithm) -> &str {
        match algorithm {
            ChecksumAlgorithm::Md5 => &self.md5,
            ChecksumAlgorithm::Sha1 => &self.sha1,
            ChecksumAlgorithm::Sha256 => &self.sha256,
            ChecksumAlgorithm::Sha384 => &self.sha384,
            ChecksumAlgorithm::Sha512 => &self.sha512,
            ChecksumAlgorithm::Crc32 => &self.crc32,
            ChecksumAlgorithm::Murmur3_32 => &self.murmur3_32,
            ChecksumAlgorithm::Murmur3_128 => &self.murmur3_128,
        }
    }

    /// Whether `value` (hex, any case, surrounding blanks ignored) is this artifact's checksum.
    pub fn matches(&self, algorithm: ChecksumAlgorithm, value: &str) -> bool {
        self.get(algorithm).eq_ignore_ascii_case(value.trim())
    }
}

/// Feeds bytes to every algorithm at once.
#[derive(Clone)]
pub struct MultiHasher {
    md5: Md5,
    sha1: Sha1,
    sha256: Sha256,
    sha384: Sha384,
    sha512: Sha512,
    crc32: crc32fast::Hasher,
    murmur32: Murmur3_32,
    murmur128: Murmur3_128,
    len: u64,
}

impl Default for MultiHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl MultiHasher {
    pub fn new() -> Self {
        Self {
            md5: Md5::new(),
            sha1: Sha1::new(),
            sha256: Sha256::new(),
            sha384: Sha384::new(),
            sha512: Sha512::new(),
            crc32: crc32fast::Hasher::new(),
            murmur32: Murmur3_32::default(),
            murmur128: Murmur3_128::default(),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.sha1.update(data);
        self.sha256.update(data);
        self.sha384.update(data);
        self.sha512.update(data);
        self.crc32.update(data);
        self.murmur32.update(data);
        self.murmur128.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Checksums {
        Checksums {
            md5: hex::encode(self.md5.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            sha384: hex::encode(self.sha384.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
            crc32: hex::encode(self.crc32.finalize().to_le_bytes()),
            murmur3_32: hex::encode(self.murmur32.finish().to_le_bytes()),
            murmur3_128: {
                let (h1, h2) = self.murmur128.finish();
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&h1.to_le_bytes());
                bytes[8..].copy_from_slice(&h2.to_le_bytes());
                hex::encode(bytes)
            },
        }
    }
}

/// Streaming MurmurHash3 x86_32 with seed 0 (Guava's `murmur3_32_fixed`).
#[derive(Clone, Default)]
struct Murmur3_32 {
    h: u32,
    tail: [u8; 4],
    tail_len: usize,
    len: u64,
}

const C1_32: u32 = 0xcc9e_2d51;
const C2_32: u32 = 0x1b87_3593;

impl Murmur3_32 {
    fn mix_k(k: u32) -> u32 {
        k.wrapping_mul(C1_32).rotate_left(15).wrapping_mul(C2_32)
    }

    fn block(&mut self, block: [u8; 4]) {
        self.h ^= Self::mix_k(u32::from_le_bytes(block));
        self.h = self
            .h
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 4 {
                return;
            }
            let block = self.tail;
            self.block(block);
            self.tail_len = 0;
        }
        let mut chunks = data.chunks_exact(4);
        for chunk in &mut chunks {
            self.block([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(mut self) -> u32 {
        if self.tail_len > 0 {
            let mut k = 0u32;
            for (i, byte) in self.tail[..self.tail_len].iter().enumerate() {
                k ^= u32::from(*byte) << (8 * i);
            }
            self.h ^= Self::mix_k(k);
        }
        // MurmurHash3 mixes in the length modulo 2^32, as Guava does.
        let mut h = self.h ^ (self.len as u32);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// Streaming MurmurHash3 x64_128 with seed 0 (Guava's `murmur3_128`).
#[derive(Clone, Default)]
struct Murmur3_128 {
    h1: u64,
    h2: u64,
    tail: [u8; 16],
    tail_len: usize,
    len: u64,
}

const C1_64: u64 = 0x87c3_7b91_1142_53d5;
const C2_64: u64 = 0x4cf5_ad43_2745_937f;

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Murmur3_128 {
    fn mix_k1(k: u64) -> u64 {
        k.wrapping_mul(C1_64).rotate_left(31).wrapping_mul(C2_64)
    }

    fn mix_k2(k: u64) -> u64 {
        k.wrapping_mul(C2_64).rotate_left(33).wrapping_mul(C1_64)
    }

    fn block(&mut self, block: &[u8]) {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&block[..8]);
        hi.copy_from_slice(&block[8..16]);
        self.h1 ^= Self::mix_k1(u64::from_le_bytes(lo));
        self.h1 = self
            .h1
            .rotate_left(27)
            .wrapping_add(self.h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        self.h2 ^= Self::mix_k2(u64::from_le_bytes(hi));
        self.h2 = self
            .h2
            .rotate_left(31)
            .wrapping_add(self.h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let take = (16 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 16 {
                return;
            }
            let block = self.tail;
            self.block(&block);
            self.tail_len = 0;
        }
        let mut chunks = data.chunks_exact(16);
        for chunk in &mut chunks {
            self.block(chunk);
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn finish(mut self) -> (u64, u64) {
        let tail = &self.tail[..self.tail_len];
        if tail.len() > 8 {
            let mut k2 = 0u64;
            for (i, byte) in tail[8..].iter().enumerate() {
                k2 ^= u64::from(*byte) << (8 * i);
            }
            self.h2 ^= Self::mix_k2(k2);
        }
        if !tail.is_empty() {
            let mut k1 = 0u64;
            for (i, byte) in tail.iter().take(8).enumerate() {
                k1 ^= u64::from(*byte) << (8 * i);
            }
            self.h1 ^= Self::mix_k1(k1);
        }
        let (mut h1, mut h2) = (self.h1 ^ self.len, self.h2 ^ self.len);
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        h1 = fmix64(h1);
        h2 = fmix64(h2);
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        (h1, h2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksums(data: &[u8]) -> Checksums {
        let mut hasher = MultiHasher::new();
        hasher.update(data);
        hasher.finish()
    }

    fn long_input() -> Vec<u8> {
        let mut data: Vec<u8> = (0..=255u8).cycle().take(768).collect();
        data.extend_from_slice(b"abc");
        data
    }

    /// Expected values from Python's `mmh3` and `zlib` packed little-endian, which is also how
    /// Guava prints them (the fox's MURMUR3_128 is Guava's own test vector).
    #[test]
    fn murmur_and_crc_match_guava_encoding() {
        let cases: [(&[u8], &str, &str, &str); 3] = [
            (
                b"",
                "00000000",
                "00000000000000000000000000000000",
                "00000000",
            ),
            (
                b"hello",
                "47fa8b24",
                "029bbd41b3a7d8cb191dae486a901e5b",
                "86a61036",
            ),
            (
                b"The quick brown fox jumps over the lazy dog",
                "23f74f2e",
                "6c1b07bc7bbc4be347939ac4a93c437a",
                "39a34f41",
            ),
        ];
        for (input, m32, m128, crc) in cases {
            let sums = checksums(input);
            assert_eq!(sums.murmur3_32, m32, "{input:?}");
            assert_eq!(sums.murmur3_128, m128, "{input:?}");
            assert_eq!(sums.crc32, crc, "{input:?}");
        }
        let sums = checksums(&long_input());
        assert_eq!(sums.murmur3_32, "2cdf59bc");
        assert_eq!(sums.murmur3_128, "f9aaf4715940241f43a5baedf5d94c95");
        assert_eq!(sums.crc32, "24993a9d");
    }

    #[test]
    fn digests_are_the_usual_hex() {
        let sums = checksums(b"hello");
        assert_eq!(sums.md5, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(sums.sha1, "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(
            sums.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(sums.matches(
            ChecksumAlgorithm::Sha256,
            " 2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824\n"
        ));
        assert!(!sums.matches(ChecksumAlgorithm::Md5, "00"));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_checksums() {
        let data = long_input();
        let whole = checksums(&data);
        for piece in [1, 3, 4, 5, 15, 16, 17, 100] {
            let mut hasher = MultiHasher::new();
            for chunk in data.chunks(piece) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.len(), data.len() as u64);
            assert_eq!(hasher.finish(), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn algorithm_names_parse_in_thingsboard_and_loose_spellings() {
        for alg in ChecksumAlgorithm::ALL {
            assert_eq!(alg.as_str().parse::<ChecksumAlgorithm>(), Ok(alg));
        }
        assert_eq!(
            "sha-256".parse::<ChecksumAlgorithm>(),
            Ok(ChecksumAlgorithm::Sha256)
        );
        assert_eq!(
            "murmur3_128".parse::<ChecksumAlgorithm>(),
            Ok(ChecksumAlgorithm::Murmur3_128)
        );
        assert!("sha3".parse::<ChecksumAlgorithm>().is_err());
    }
}
