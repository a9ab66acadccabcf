/**
 * The fields of one of WeChat's flat XML messages (`<xml><Tag><![CDATA[v]]></Tag><N>1</N></xml>`), by
 * tag name. WeChat's pushes are one level deep; nested elements are returned as their raw inner text.
 * Not a general XML parser: no attributes, no DTDs (so no entity expansion to abuse).
 *
 * The input may be an unauthenticated request body, so the parse is one pass from left to right: every
 * search starts where the previous one ended (no backtracking regex), and an unclosed tag costs a stack
 * entry, not a rescan of the rest of the input.
 */
export function parseFlatXml(xml: string): Record<string, string> {
  const fields: Record<string, string> = {};
  const start = xml.indexOf('<xml>');
  const end = xml.lastIndexOf('</xml>');
  if (start === -1 || end < start + 5) return fields;
  // The open elements below <xml>: open[0] is the field being read, whose content starts at contentStart.
  // `counts` says at once whether a closing tag has an open element to end, so a closing tag costs no
  // more than the elements it closes.
  const open: string[] = [];
  const counts = new Map<string, number>();
  let contentStart = 0;
  let nested = false;
  let pos = start + 5;
  while (pos < end) {
    const lt = xml.indexOf('<', pos);
    if (lt === -1 || lt >= end) break;
    if (xml.startsWith('<![CDATA[', lt)) {
      const close = xml.indexOf(']]>', lt + 9);
      if (close === -1 || close >= end) break;
      pos = close + 3;
      continue;
    }
    const closing = xml[lt + 1] === '/';
    const nameStart = closing ? lt + 2 : lt + 1;
    let nameEnd = nameStart;
    while (nameEnd < end && NAME_CHAR.test(xml[nameEnd]!)) nameEnd += 1;
    const name = xml.slice(nameStart, nameEnd);
    if (nameEnd === nameStart || xml[nameEnd] !== '>' || !NAME_START.test(name[0]!)) {
      // Not a tag this parser reads (`<?…`, `<!--…`, an attribute, a stray `<`): part of the text.
      pos = lt + 1;
      continue;
    }
    pos = nameEnd + 1;
    if (!closing) {
      if (open.length === 0) {
        contentStart = pos;
        nested = false;
      } else {
        nested = true;
      }
      open.push(name);
      counts.set(name, (counts.get(name) ?? 0) + 1);
      continue;
    }
    // A closing tag ends the innermost open element of its name, and every element opened inside it.
    if (!counts.get(name)) continue;
    let closed: string | undefined;
    while (closed !== name) {
      closed = open.pop()!;
      counts.set(closed, counts.get(closed)! - 1);
    }
    if (open.length === 0 && !Object.hasOwn(fields, name)) {
      const content = xml.slice(contentStart, lt);
      fields[name] = nested ? content : readValue(content);
    }
  }
  return fields;
}

const NAME_START = /[A-Za-z_]/;
const NAME_CHAR = /[\w.-]/;

/** A field's text: CDATA sections as they are, the text between them with its entities decoded. */
function readValue(content: string): string {
  let value = '';
  let pos = 0;
  for (let open = content.indexOf('<![CDATA['); open !== -1; open = content.indexOf('<![CDATA[', pos)) {
    const close = content.indexOf(']]>', open + 9);
    if (close === -1) break;
    value += decodeEntities(content.slice(pos, open)) + content.slice(open + 9, close);
    pos = close + 3;
  }
  return value + decodeEntities(content.slice(pos));
}

function decodeEntities(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos);/g, (_, name: string) => ({ lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" })[name]!);
}

/** Escapes CDATA content so `]]>` inside a value cannot end the section early. */
export function cdata(value: string): string {
  return `<![CDATA[${value.replaceAll(']]>', ']]]]><![CDATA[>')}]]>`;
}
