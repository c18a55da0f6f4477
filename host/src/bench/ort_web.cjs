// onnxruntime-web's wasm backend on Node.js, one thread, for `netless bench`.
// argv: folder the npm package resolves from, model, runs, output folder, JSON list of [name, .npy path].
// Prints one JSON line: version, prepare_ms, times_ms, outputs ([name, .npy path]), or error.
const fs = require("fs");
const path = require("path");
const [base, model, runs, out, feedsJson] = process.argv.slice(2);
const fail = (error) => { console.log(JSON.stringify({ error })); process.exit(0); };
let ort;
try {
  ort = require(require.resolve("onnxruntime-web", { paths: [base] }));
} catch (e) {
  fail(`cannot load the npm package onnxruntime-web from ${base} (\`npm install onnxruntime-web\` there): ${e.message.split("\n")[0]}`);
}
const types = {
  "<f4": ["float32", Float32Array], "<f8": ["float64", Float64Array], "|i1": ["int8", Int8Array],
  "|u1": ["uint8", Uint8Array], "<i2": ["int16", Int16Array], "<u2": ["uint16", Uint16Array],
  "<i4": ["int32", Int32Array], "<u4": ["uint32", Uint32Array], "<i8": ["int64", BigInt64Array],
  "<u8": ["uint64", BigUint64Array], "|b1": ["bool", Uint8Array],
};
const readNpy = (file) => {
  const bytes = fs.readFileSync(file);
  const major = bytes[6];
  const [length, start] = major === 1 ? [bytes.readUInt16LE(8), 10] : [bytes.readUInt32LE(8), 12];
  const header = bytes.toString("latin1", start, start + length);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1].split(",").map((d) => d.trim()).filter((d) => d).map(Number);
  if (!types[descr] || !shape) fail(`${file}: an .npy header onnxruntime-web's bench cannot read: ${header}`);
  const [type, Array] = types[descr];
  const data = bytes.buffer.slice(bytes.byteOffset + start + length, bytes.byteOffset + bytes.length);
  return new ort.Tensor(type, type === "bool" ? new Uint8Array(data) : new Array(data), shape);
};
const writeNpy = (file, tensor) => {
  const descr = Object.keys(types).find((d) => types[d][0] === tensor.type);
  if (!descr) fail(`onnxruntime-web returned an output of type ${tensor.type}, which the bench cannot save`);
  const dims = tensor.dims.length === 1 ? `${tensor.dims[0]},` : tensor.dims.join(", ");
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const prefix = Buffer.alloc(10);
  Buffer.from("\x93NUMPY\x01\x00", "latin1").copy(prefix);
  prefix.writeUInt16LE(header.length, 8);
  const data = Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, "latin1"), data]));
};
(async () => {
  ort.env.wasm.numThreads = 1;
  const feeds = Object.fromEntries(JSON.parse(feedsJson).map(([name, file]) => [name, readNpy(file)]));
  const bytes = fs.readFileSync(model);
  let t = performance.now();
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const prepare = performance.now() - t;
  // V8 first runs wasm from its baseline compiler and tiers up in the background: warm up for a second.
  const warmup = performance.now();
  let results = await session.run(feeds);
  while (performance.now() - warmup < 1000) results = await session.run(feeds);
  const times = [];
  for (let i = 0; i < Number(runs); i++) {
    t = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t);
  }
  const outputs = session.outputNames.map((name, i) => {
    const file = path.join(out, `ort-web-output-${i}.npy`);
    writeNpy(file, results[name]);
    return [name, file];
  });
  console.log(JSON.stringify({ version: `${ort.env.versions.web} on Node.js ${process.version}`, prepare_ms: prepare, times_ms: times, outputs }));
})().catch((e) => fail(`onnxruntime-web failed: ${e.message || e}`));
