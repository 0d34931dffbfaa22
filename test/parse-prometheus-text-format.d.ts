/** The parser has no bundled types: it returns metric families as plain objects. */
declare module 'parse-prometheus-text-format' {
  export default function parsePrometheusTextFormat(text: string): unknown[];
}
