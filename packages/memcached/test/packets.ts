/** Splits a byte stream into binary-protocol packets: a 24-byte header whose bytes 8..11 give the body length. */
export function framer(onPacket: (packet: Buffer) => void): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 24 && pending.length >= 24 + pending.readUInt32BE(8)) {
      const size = 24 + pending.readUInt32BE(8);
      onPacket(pending.subarray(0, size));
      pending = pending.subarray(size);
    }
  };
}
