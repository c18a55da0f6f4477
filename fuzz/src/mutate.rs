//! Mutations: byte-level ones for any input, and a JSON-aware one that changes a document's values
//! while keeping it JSON.

use serde_json::{Map, Value};

/// A small deterministic random source (splitmix64).
pub struct Rng(u64);

impl Rng {
    /// A source from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True once in `n` times.
    pub fn chance(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Integers at the edges of the types decoders read.
pub const INTERESTING: &[i64] = &[0, 1, -1, 2, 7, 8, 16, 127, 128, 255, 256, 65535, 65536, i32::MAX as i64, i32::MIN as i64, u32::MAX as i64, i64::MAX, i64::MIN, 1 << 40];

/// Numbers, as text, that break naive number handling.
const NUMBERS: &[&str] = &["0", "-1", "1", "255", "4294967296", "18446744073709551615", "18446744073709551616", "9223372036854775807", "-9223372036854775808", "1e400", "1.5", "-0", "NaN", "65536"];

/// A mutation of `input` (1 to 8 byte-level edits); `other` is another corpus entry to splice from.
pub fn bytes(input: &[u8], other: &[u8], dictionary: &[&[u8]], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    let edits = 1 << rng.below(4);
    for _ in 0..edits {
        edit(&mut data, other, dictionary, rng);
    }
    data
}

fn edit(data: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]], rng: &mut Rng) {
    let len = data.len();
    let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) };
    match rng.below(13) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = at(rng);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff]);
        }
        3 if len >= 8 => {
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let i = rng.below(len - width + 1);
            let value = rng.pick(INTERESTING).to_le_bytes();
            data[i..i + width].copy_from_slice(&value[..width]);
        }
        4 if len > 0 => {
            let i = at(rng);
            let n = rng.below((len - i).min(64)) + 1;
            data.drain(i..i + n);
        }
        5 => {
            let i = at(rng);
            let n = rng.below(16) + 1;
            let fresh: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(i..i, fresh);
        }
        6 if len > 0 => {
            let i = at(rng);
            let n = rng.below((len - i).min(256)) + 1;
            let chunk = data[i..i + n].to_vec();
            let j = at(rng);
            data.splice(j..j, chunk);
        }
        7 if !dictionary.is_empty() => {
            let i = at(rng);
            data.splice(i..i, rng.pick(dictionary).iter().copied());
        }
        8 if !dictionary.is_empty() && len > 0 => {
            let token = rng.pick(dictionary);
            let i = at(rng);
            let end = (i + token.len()).min(len);
            data.splice(i..end, token.iter().copied());
        }
        9 if !other.is_empty() => {
            let i = at(rng);
            let j = rng.below(other.len());
            data.truncate(i);
            data.extend_from_slice(&other[j..]);
        }
        10 if len > 0 => data.truncate(at(rng)),
        11 => replace_number(data, rng),
        _ => {
            let i = at(rng);
            data.insert(i, *rng.pick(b"{}[]\",:=\n\\0-."));
        }
    }
}

/// Replaces one run of ASCII digits with an edge-case number.
fn replace_number(data: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..data.len()).filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let start = *rng.pick(&starts);
    let end = (start..data.len()).find(|&i| !data[i].is_ascii_digit()).unwrap_or(data.len());
    data.splice(start..end, rng.pick(NUMBERS).bytes().collect::<Vec<_>>());
}

/// A variant of a JSON document with one value changed, removed, duplicated or replaced by a
/// subtree from elsewhere in it; `None` if `input` is not JSON.
pub fn json(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(input).ok()?;
    let mut values = Vec::new();
    collect(&doc, &mut values);
    let donor = values[rng.below(values.len())].clone();
    let mut nodes = 0;
    count(&doc, &mut nodes);
    let target = rng.below(nodes);
    let mut index = 0;
    change(&mut doc, target, &mut index, &donor, rng);
    serde_json::to_vec(&doc).ok()
}

fn collect(value: &Value, out: &mut Vec<Value>) {
    out.push(value.clone());
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

fn count(value: &Value, n: &mut usize) {
    *n += 1;
    match value {
        Value::Array(items) => items.iter().for_each(|v| count(v, n)),
        Value::Object(map) => map.values().for_each(|v| count(v, n)),
        _ => {}
    }
}

fn change(value: &mut Value, target: usize, index: &mut usize, donor: &Value, rng: &mut Rng) {
    if *index == target {
        *value = replacement(value, donor, rng);
        return;
    }
    *index += 1;
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| change(v, target, index, donor, rng)),
        Value::Object(map) => map.values_mut().for_each(|v| change(v, target, index, donor, rng)),
        _ => {}
    }
}

fn replacement(value: &Value, donor: &Value, rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => donor.clone(),
        1 => Value::Null,
        2 => Value::Bool(rng.chance(2)),
        3 => serde_json::from_str(*rng.pick(NUMBERS)).unwrap_or(Value::from(0)),
        4 => Value::from(*rng.pick(INTERESTING)),
        5 => Value::String(rng.pick(&["", "FP32", "BOOL", "BYTES", "INT64", "x", "../x", "é"]).to_string()),
        6 => Value::Array(vec![value.clone(), value.clone()]),
        7 => match value {
            Value::Array(items) if !items.is_empty() => {
                let mut items = items.clone();
                if rng.chance(2) {
                    items.remove(rng.below(items.len()));
                } else {
                    let i = rng.below(items.len());
                    items.insert(i, items[i].clone());
                }
                Value::Array(items)
            }
            Value::Object(map) if !map.is_empty() => {
                let mut map: Map<String, Value> = map.clone();
                let key = map.keys().nth(rng.below(map.len())).cloned().expect("not empty");
                map.remove(&key);
                Value::Object(map)
            }
            other => Value::Array(vec![other.clone()]),
        },
        8 => match value {
            Value::Number(n) => Value::from(n.as_f64().map_or(0.0, |f| -f - 1.0)),
            Value::String(s) => Value::String(format!("{s}{s}")),
            other => other.clone(),
        },
        _ => Value::Array(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_mutations_stay_json_and_change_something() {
        let mut rng = Rng::new(7);
        let input = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.0,2.0]}]}"#;
        let mut changed = 0;
        for _ in 0..200 {
            let out = json(input, &mut rng).expect("JSON in, JSON out");
            assert!(serde_json::from_slice::<Value>(&out).is_ok());
            if out != input.to_vec() {
                changed += 1;
            }
        }
        assert!(changed > 150, "{changed} of 200 mutations changed the document");
    }

    #[test]
    fn byte_mutations_differ_from_their_input() {
        let mut rng = Rng::new(3);
        let input = b"spin_manifest_version = 2\n".to_vec();
        let differing = (0..100).filter(|_| bytes(&input, b"other", &[b"[[trigger.http]]"], &mut rng) != input).count();
        assert!(differing > 80, "{differing}");
    }
}
