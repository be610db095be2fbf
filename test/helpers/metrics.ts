/**
 * The value of one sample of GET /metrics, e.g.
 * `ws_bus_catchup_total{result="caught_up"}`; 0 when absent.
 */
export async function metricValue (baseUrl: string, sample: string): Promise<number> {
  const text = await (await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `))
  return line === undefined ? 0 : Number(line.slice(sample.length + 1))
}
