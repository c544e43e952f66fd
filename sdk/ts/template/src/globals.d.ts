// The web APIs the component's JavaScript engine (StarlingMonkey) provides
// that this plugin uses; TypeScript's ES library does not declare them.
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
declare class TextDecoder {
  constructor(label?: string);
  decode(input?: Uint8Array): string;
}
