// The configuration reference (docs/configuration.md), read from the zod schema's source and its
// TSDoc with the TypeScript compiler API: one table per section, each field with its type, default
// and description. Pure: source text in, Markdown out (scripts/generate-config-docs.ts writes it).
import ts from 'typescript';

/** What one zod expression of the schema describes, as far as the reference needs it. */
interface Shape {
  kind:
    | 'object'
    | 'string'
    | 'number'
    | 'boolean'
    | 'enum'
    | 'literal'
    | 'array'
    | 'record'
    | 'union'
    | 'variants'
    | 'schema'
    | 'unknown';
  fields: Field[];
  /** enum values, a literal's value */
  values: string[];
  /** array element, record value, union members or discriminated variants */
  items: Shape[];
  discriminator?: string;
  /** the leading TSDoc of a union member (a discriminated variant's description) */
  doc?: Doc;
  optional: boolean;
  /** source text of `.default(x)` / `.prefault(x)` */
  defaultText?: string;
  int: boolean;
  min?: number;
  max?: number;
  exclusiveMin?: number;
}

interface Field {
  name: string;
  doc: Doc;
  shape: Shape;
}

interface Doc {
  text: string;
  defaultValue?: string;
}

export interface Row {
  setting: string;
  type: string;
  default: string;
  description: string;
}

export interface Section {
  /** `jobTypes[]`, `secrets.items.<name>`, … ('' for the top level) */
  path: string;
  intro: string;
  rows: Row[];
}

export interface ConfigReference {
  sections: Section[];
  /** fields the reference cannot describe: no TSDoc, or optional without a `@defaultValue` */
  problems: string[];
}

const blank = (kind: Shape['kind']): Shape => ({
  kind,
  fields: [],
  values: [],
  items: [],
  optional: false,
  int: false,
});

/** The last `/** … *\/` comment before a node, split into its text and `@defaultValue`. */
function docOf(node: ts.Node, source: ts.SourceFile): Doc {
  const ranges = ts.getLeadingCommentRanges(source.text, node.getFullStart()) ?? [];
  const last = ranges.filter((r) => source.text.startsWith('/**', r.pos)).at(-1);
  if (!last) return { text: '' };
  const body = source.text
    .slice(last.pos + 3, last.end - 2)
    .split('\n')
    .map((l) => l.replace(/^\s*\*\s?/, ''))
    .join(' ')
    .replace(/\{@link\s+([^}]+)\}/g, '`$1`')
    .replace(/\s+/g, ' ')
    .trim();
  const at = body.indexOf('@defaultValue');
  if (at < 0) return { text: body };
  return { text: body.slice(0, at).trim(), defaultValue: body.slice(at + '@defaultValue'.length).trim() };
}

/** Reads the schema module: every top-level `const` by name, to follow references such as `tlsClientSchema`. */
function declarations(source: ts.SourceFile): Map<string, ts.Expression> {
  const out = new Map<string, ts.Expression>();
  for (const st of source.statements) {
    if (!ts.isVariableStatement(st)) continue;
    for (const d of st.declarationList.declarations)
      if (ts.isIdentifier(d.name) && d.initializer) out.set(d.name.text, d.initializer);
  }
  return out;
}

function numberOf(node: ts.Expression | undefined): number | undefined {
  if (!node) return undefined;
  if (ts.isNumericLiteral(node)) return Number(node.text.replace(/_/g, ''));
  if (ts.isPrefixUnaryExpression(node) && node.operator === ts.SyntaxKind.MinusToken) {
    const n = numberOf(node.operand);
    return n === undefined ? undefined : -n;
  }
  if (ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.AsteriskToken) {
    const a = numberOf(node.left);
    const b = numberOf(node.right);
    return a === undefined || b === undefined ? undefined : a * b;
  }
  if (ts.isParenthesizedExpression(node)) return numberOf(node.expression);
  return undefined;
}

class SchemaReader {
  readonly #source: ts.SourceFile;
  readonly #consts: Map<string, ts.Expression>;

  constructor(source: ts.SourceFile) {
    this.#source = source;
    this.#consts = declarations(source);
  }

  root(name: string): Shape {
    const init = this.#consts.get(name);
    if (!init) throw new Error(`src/config/schema.ts has no const ${name}`);
    return this.read(init);
  }

  read(node: ts.Expression): Shape {
    if (ts.isParenthesizedExpression(node) || ts.isAsExpression(node)) return this.read(node.expression);
    if (ts.isIdentifier(node)) {
      const init = this.#consts.get(node.text);
      return init ? this.read(init) : blank('unknown');
    }
    if (!ts.isCallExpression(node) || !ts.isPropertyAccessExpression(node.expression)) return blank('unknown');
    const method = node.expression.name.text;
    const target = node.expression.expression;
    if (ts.isIdentifier(target) && target.text === 'z') return this.#construct(method, node.arguments);
    return this.#modify(this.read(target), method, node.arguments);
  }

  #strings(node: ts.Expression | undefined): string[] {
    if (!node) return [];
    if (ts.isIdentifier(node)) return this.#strings(this.#consts.get(node.text));
    if (ts.isAsExpression(node)) return this.#strings(node.expression);
    if (ts.isArrayLiteralExpression(node))
      return node.elements.filter(ts.isStringLiteralLike).map((e) => JSON.stringify(e.text));
    return [];
  }

  #construct(method: string, args: ts.NodeArray<ts.Expression>): Shape {
    const [a, b] = args;
    switch (method) {
      case 'object': {
        const shape = blank('object');
        if (a && ts.isObjectLiteralExpression(a))
          for (const p of a.properties)
            if (ts.isPropertyAssignment(p) && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name)))
              shape.fields.push({ name: p.name.text, doc: docOf(p, this.#source), shape: this.read(p.initializer) });
        return shape;
      }
      case 'string':
      case 'number':
      case 'boolean':
        return blank(method);
      case 'enum':
        return { ...blank('enum'), values: this.#strings(a) };
      case 'literal':
        return { ...blank('literal'), values: a && ts.isStringLiteralLike(a) ? [JSON.stringify(a.text)] : [] };
      case 'array':
        return { ...blank('array'), items: a ? [this.read(a)] : [] };
      case 'record':
        return { ...blank('record'), items: b ? [this.read(b)] : [] };
      case 'union':
      case 'discriminatedUnion': {
        const list = method === 'union' ? a : b;
        const items =
          list && ts.isArrayLiteralExpression(list)
            ? list.elements.map((e) => ({ ...this.read(e), doc: docOf(e, this.#source) }))
            : [];
        if (method === 'union') return { ...blank('union'), items };
        return { ...blank('variants'), items, discriminator: a && ts.isStringLiteralLike(a) ? a.text : 'type' };
      }
      case 'custom':
        return blank('schema');
      default:
        return blank('unknown');
    }
  }

  #modify(shape: Shape, method: string, args: ts.NodeArray<ts.Expression>): Shape {
    const [a] = args;
    switch (method) {
      case 'optional':
        return { ...shape, optional: true };
      case 'default':
      case 'prefault':
        return { ...shape, optional: true, defaultText: a?.getText(this.#source) };
      case 'int':
        return { ...shape, int: true };
      case 'positive':
        return { ...shape, exclusiveMin: 0 };
      case 'min': {
        const n = numberOf(a);
        return shape.kind === 'number' && n !== undefined ? { ...shape, min: n } : shape;
      }
      case 'max': {
        const n = numberOf(a);
        return shape.kind === 'number' && n !== undefined ? { ...shape, max: n } : shape;
      }
      default:
        // regex, startsWith, refine, strict, includes, …: checks the reference leaves to the description
        return shape;
    }
  }
}

/** `integer, 1–1000`, `number > 0`: the range zod enforces, in words. */
function numberRange(s: Shape): string {
  const lower = s.min ?? (s.exclusiveMin === 0 && s.int ? 1 : undefined);
  const fmt = (n: number): string => String(n);
  if (lower !== undefined && s.max !== undefined) return ` ${fmt(lower)}–${fmt(s.max)}`;
  if (lower !== undefined) return ` ≥ ${fmt(lower)}`;
  if (s.exclusiveMin === 0) return ' > 0';
  if (s.max !== undefined) return ` ≤ ${fmt(s.max)}`;
  return '';
}

/** A TypeScript-like name of a shape (objects as their fields' names). */
function typeName(s: Shape): string {
  switch (s.kind) {
    case 'number':
      return s.int ? 'integer' : 'number';
    case 'enum':
    case 'literal':
      return s.values.join(' | ');
    case 'array': {
      const [el] = s.items;
      const inner = el ? typeName(el) : 'unknown';
      return /[ |]/.test(inner) && !inner.startsWith('{') ? `(${inner})[]` : `${inner}[]`;
    }
    case 'record':
      return `Record<string, ${s.items[0] ? typeName(s.items[0]) : 'unknown'}>`;
    case 'union':
      return s.items.map(typeName).join(' | ');
    case 'variants':
      return `object, by ${s.discriminator ?? 'type'}`;
    case 'object':
      return `{ ${s.fields.map((f) => `${f.name}${f.shape.optional ? '?' : ''}: ${typeName(f.shape)}`).join('; ')} }`;
    case 'schema':
      return 'zod schema';
    default:
      return s.kind;
  }
}

function typeCell(s: Shape): string {
  if (s.kind === 'object') return 'object';
  if (s.kind === 'array' && s.items[0]?.kind === 'object' && s.items[0].fields.length > 2) return '`object[]`';
  if (s.kind === 'record' && s.items[0]?.kind === 'object') return '`Record<string, object>`';
  const range = s.kind === 'number' ? numberRange(s) : '';
  return `\`${typeName(s)}\`${range}`;
}

function defaultCell(field: Field): string {
  const tag = field.doc.defaultValue;
  if (tag !== undefined) return /^(-?[\d.]+|true|false|\[\]|\{\})$/.test(tag) ? `\`${tag}\`` : tag;
  const { shape } = field;
  if (shape.defaultText !== undefined)
    return shape.kind === 'object' || shape.defaultText === '{}' ? 'each field’s default' : `\`${shape.defaultText}\``;
  return shape.optional ? 'none' : '(required)';
}

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** A field gets its own section when it is a container of many settings or a list of them. */
function ownSection(shape: Shape, depth: number): Shape | undefined {
  const inner = shape.kind === 'array' || shape.kind === 'record' ? shape.items[0] : shape;
  if (inner?.kind !== 'object') return undefined;
  if (shape.kind !== 'object' && inner.fields.length > 2) return inner;
  return depth === 0 || inner.fields.length >= 5 ? inner : undefined;
}

/** What the keys of a record of settings stand for, in section names (`secrets.exec.<program>`). */
const KEY_NAMES: Record<string, string> = { exec: 'program' };

function sectionPath(prefix: string, field: Field): string {
  const base = prefix ? `${prefix}.${field.name}` : field.name;
  if (field.shape.kind === 'array') return `${base}[]`;
  if (field.shape.kind === 'record') return `${base}.<${KEY_NAMES[field.name] ?? 'name'}>`;
  return base;
}

/** GitHub's heading anchor for a heading text. */
export function anchorOf(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N}_\- ]/gu, '')
    .replace(/ /g, '-');
}

const heading = (path: string): string => (path ? `\`${path}\`` : 'Top level');

class ReferenceBuilder {
  readonly sections: Section[] = [];
  readonly problems: string[] = [];

  section(path: string, intro: string, shape: Shape, depth: number): void {
    const section: Section = { path, intro, rows: [] };
    this.sections.push(section);
    const later: [string, string, Shape][] = [];
    this.#rows(section, '', shape, path, depth, later);
    for (const [p, i, s] of later) this.section(p, i, s, depth + 1);
  }

  #rows(
    section: Section,
    prefix: string,
    shape: Shape,
    path: string,
    depth: number,
    later: [string, string, Shape][],
  ): void {
    for (const field of shape.fields) {
      const setting = `${prefix}${field.name}`;
      const where = path ? `${path}.${setting}` : setting;
      const own = ownSection(field.shape, depth);
      if (own) {
        const sub = sectionPath(path, { ...field, name: setting });
        later.push([sub, field.doc.text, own]);
        section.rows.push({
          setting,
          type: typeCell(field.shape),
          default: defaultCell(field),
          description: `${field.doc.text ? `${field.doc.text} ` : ''}See [${heading(sub)}](#${anchorOf(heading(sub))}).`,
        });
        continue;
      }
      const isObject = field.shape.kind === 'object';
      if (!field.doc.text && !isObject && field.shape.kind !== 'variants')
        this.problems.push(`${where}: no TSDoc description`);
      if (field.shape.optional && field.shape.defaultText === undefined && field.doc.defaultValue === undefined)
        this.problems.push(`${where}: optional without a @defaultValue saying what unset means`);
      if (field.shape.kind === 'variants') {
        this.#variants(section, setting, field, where);
        continue;
      }
      section.rows.push({
        setting,
        type: typeCell(field.shape),
        default: defaultCell(field),
        description: field.doc.text,
      });
      if (isObject) this.#rows(section, `${setting}.`, field.shape, path, depth + 1, later);
    }
  }

  /** A discriminated union: the discriminator's row lists the variants, then each variant's fields. */
  #variants(section: Section, setting: string, field: Field, where: string): void {
    const key = field.shape.discriminator ?? 'type';
    const names: string[] = [];
    const rest: Row[] = [];
    for (const v of field.shape.items) {
      const tag = v.fields.find((f) => f.name === key);
      const value = tag?.shape.values[0] ?? '?';
      const doc = v.doc?.text || tag?.doc.text || '';
      if (!doc) this.problems.push(`${where} (${key}: ${value}): no TSDoc description`);
      names.push(`\`${value}\`: ${doc}`);
      for (const f of v.fields) {
        if (f.name === key) continue;
        if (!f.doc.text) this.problems.push(`${where}.${f.name} (${key}: ${value}): no TSDoc description`);
        rest.push({
          setting: `${setting}.${f.name}`,
          type: typeCell(f.shape),
          default: defaultCell(f),
          description: `(\`${key}: ${value}\`) ${f.doc.text}`.trim(),
        });
      }
    }
    section.rows.push({
      setting,
      type: 'object',
      default: defaultCell(field),
      description: field.doc.text || `One of the following, chosen by \`${key}\`.`,
    });
    section.rows.push({
      setting: `${setting}.${key}`,
      type: `\`${field.shape.items.map((v) => v.fields.find((f) => f.name === key)?.shape.values[0] ?? '?').join(' | ')}\``,
      default: '(required)',
      description: names.join(' '),
    });
    section.rows.push(...rest);
  }
}

/** Reads `src/config/schema.ts` (its text) and lists every setting under `fleetConfigSchema`. */
export function configReference(schemaSource: string, fileName = 'src/config/schema.ts'): ConfigReference {
  const source = ts.createSourceFile(fileName, schemaSource, ts.ScriptTarget.ES2022, true);
  const root = new SchemaReader(source).root('fleetConfigSchema');
  const builder = new ReferenceBuilder();
  builder.section('', '', root, 0);
  return { sections: builder.sections, problems: builder.problems };
}

/** The reference as Markdown: a heading and a table per section. */
export function renderReference(ref: ConfigReference): string {
  const out: string[] = [];
  for (const s of ref.sections) {
    out.push(`## ${heading(s.path)}`, '');
    if (s.intro) out.push(s.intro, '');
    out.push('| setting | type | default | description |', '|---|---|---|---|');
    for (const r of s.rows)
      out.push(`| \`${r.setting}\` | ${cell(r.type)} | ${cell(r.default)} | ${cell(r.description)} |`);
    out.push('');
  }
  return out.join('\n');
}

export const GENERATED_BEGIN =
  '<!-- BEGIN GENERATED by `npm run docs:config` from src/config/schema.ts: edit the TSDoc there, not this text -->';
export const GENERATED_END = '<!-- END GENERATED -->';

/** docs/configuration.md with the part between the markers replaced by the reference. */
export function configurationDoc(current: string, schemaSource: string): string {
  const begin = current.indexOf(GENERATED_BEGIN);
  const end = current.indexOf(GENERATED_END);
  if (begin < 0 || end < begin)
    throw new Error(
      `docs/configuration.md lacks the markers; put ${GENERATED_BEGIN} and ${GENERATED_END} where the reference goes`,
    );
  const ref = configReference(schemaSource);
  if (ref.problems.length > 0)
    throw new Error(
      `src/config/schema.ts: ${ref.problems.length} field(s) cannot be documented. Fix: give each a TSDoc comment (and @defaultValue when optional):\n  ${ref.problems.join('\n  ')}`,
    );
  return `${current.slice(0, begin + GENERATED_BEGIN.length)}\n\n${renderReference(ref)}\n${current.slice(end)}`;
}
