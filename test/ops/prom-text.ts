/**
 * prom-text: a strict parser of the Prometheus text exposition format (version 0.0.4) for the
 * metrics tests: every sample line must belong to a family declared by `# TYPE`, labels must be
 * well formed, values numbers. Throws on anything else, so a malformed scrape fails the test.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help: string;
  samples: Sample[];
}

const namePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let rest = text;
  while (rest.length > 0) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,?)/.exec(rest);
    if (m === null) throw new Error(`bad labels: {${text}}`);
    labels[m[1]!] = m[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    rest = rest.slice(m[0].length);
    if (m[3] === '' && rest.length > 0) throw new Error(`bad labels: {${text}}`);
  }
  return labels;
}

function parseValue(text: string): number {
  // As Prometheus parses values (Go's strconv.ParseFloat): Inf and NaN in any case. prom-client
  // writes NaN as "Nan" (nodejs_eventloop_lag_mean_seconds between two scrapes closer than its
  // sampling, for one).
  const lower = text.toLowerCase();
  if (lower === '+inf' || lower === 'inf') return Infinity;
  if (lower === '-inf') return -Infinity;
  if (lower === 'nan') return NaN;
  const v = Number(text);
  if (text.length === 0 || Number.isNaN(v)) throw new Error(`bad value "${text}"`);
  return v;
}

export function parsePromText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const familyOf = (sample: string): Family | undefined => {
    const direct = families.get(sample);
    if (direct) return direct;
    for (const suffix of ['_bucket', '_sum', '_count']) {
      if (sample.endsWith(suffix)) {
        const f = families.get(sample.slice(0, -suffix.length));
        if (f && (f.type === 'histogram' || f.type === 'summary')) return f;
      }
    }
    return undefined;
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('# HELP ')) {
      const [name, ...help] = line.slice(7).split(' ');
      const f = families.get(name!) ?? { name: name!, type: 'untyped' as const, help: '', samples: [] };
      f.help = help.join(' ');
      families.set(name!, f);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      if (!namePattern.test(name!)) throw new Error(`bad metric name ${name}`);
      if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(type!)) throw new Error(`bad type ${type}`);
      const f = families.get(name!) ?? { name: name!, type: 'untyped' as const, help: '', samples: [] };
      f.type = type as Family['type'];
      families.set(name!, f);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (m === null) throw new Error(`bad sample line: ${line}`);
    const f = familyOf(m[1]!);
    if (f === undefined) throw new Error(`sample ${m[1]} has no # TYPE`);
    let value: number;
    try {
      value = parseValue(m[3]!);
    } catch (error) {
      throw new Error(`${(error as Error).message} in: ${line}`);
    }
    f.samples.push({ name: m[1]!, labels: parseLabels(m[2] ?? ''), value });
  }
  return families;
}

/** value: the sample `name` whose labels include `labels` (undefined when absent). */
export function value(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue;
      if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
    }
  }
  return undefined;
}

export async function scrape(address: string): Promise<{ status: number; contentType: string; families: Map<string, Family>; text: string }> {
  const response = await fetch(`http://${address}/metrics`);
  const text = await response.text();
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', families: parsePromText(text), text };
}
