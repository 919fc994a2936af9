// Types of the AURA browser SDK (ESM import "@aura/sdk", or the script-tag build's global `Aura`).

export as namespace Aura;

/** A consent scope: events need "analytics"; ranking and feedback need "personalization". */
export type Scope = 'analytics' | 'personalization';

export const SCOPES: Scope[];
export const version: string;
export const defaults: Required<Omit<Options, 'device' | 'geo' | 'pageType' | 'cmp' | 'env'>>;

/** A consent platform adapter: `read` returns the granted scopes, or null while the platform has no answer. */
export interface ConsentAdapter {
  read(): string[] | null;
  subscribe?(listener: (scopes: string[]) => void): () => void;
}

/** OneTrust adapter; `groups` maps OneTrust category ids to scopes (default C0002: analytics, C0004: personalization). */
export function oneTrust(groups?: Record<string, Scope>, win?: Window): ConsentAdapter;

export interface Consent {
  /** The granted scopes. */
  current(): Scope[];
  has(scope: Scope): boolean;
  /** Grant scopes (default: all); stores the choice. */
  grant(scopes?: Scope[]): void;
  /** Revoke scopes (default: all); wipes ids and queued events. */
  revoke(scopes?: Scope[]): void;
  onChange(listener: (scopes: Scope[], revoked: boolean) => void): () => void;
  /** Follow a consent platform; returns a function that stops following it. */
  connect(adapter: ConsentAdapter): () => void;
}

export interface Options {
  /** Gateway base URL, default "http://127.0.0.1:8000". */
  apiUrl?: string;
  /** Rank timeout in ms before falling back to the page's content, default 1000. */
  timeout?: number;
  /** Flush when this many events are queued, default 1000 (EVENT_BATCH_SIZE). */
  eventBatchSize?: number;
  /** Flush queued events after this many ms, default 5000 (EVENT_FLUSH_INTERVAL). */
  flushInterval?: number;
  /** Most events and feedback kept while the gateway is unreachable; oldest are dropped first, default 1000. */
  maxQueueSize?: number;
  /** First retry delay in ms, doubled per failure up to `retryMax`, defaults 1000 and 60000. */
  retryBase?: number;
  retryMax?: number;
  /** Track a page view at start (or at consent), default true. */
  pageView?: boolean;
  /** Device class; detected from the pointer and screen when absent. */
  device?: 'mobile' | 'desktop' | 'tablet';
  geo?: { country: string; region?: string };
  /** Default page type sent with each rank, e.g. "index" or "article". */
  pageType?: string;
  /** Consent platform to follow, e.g. `oneTrust()`. */
  cmp?: ConsentAdapter;
  /** Platform overrides, for tests. */
  env?: Partial<{
    fetch: typeof fetch;
    setTimeout: (fn: () => void, ms: number) => unknown;
    clearTimeout: (id: unknown) => void;
    now: () => number;
    randomId: () => string;
    window: Window;
    document: Document;
    navigator: Navigator;
    localStorage: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  }>;
}

export interface ItemMetadata {
  title?: string;
  url?: string;
  topics?: string[];
}

export interface RankedItem {
  content_id: string;
  score?: number;
  /** Why the item was chosen, e.g. "beginner+mobile+intent:learn". */
  reason?: string;
  metadata?: ItemMetadata;
  position?: number;
  propensity?: number;
  explored?: boolean;
}

export interface RankResult {
  surface: string;
  items: RankedItem[];
  /** The decision's id; null for a fallback. */
  request_id: string | null;
  /** True when `items` are the page's fallback (no consent, timeout, API error or empty ranking). */
  fallback: boolean;
  /** Why the fallback was used: "consent", "timeout", "network", "empty", an API error code or "http_<status>". */
  error?: string;
  segment?: { id: string; confidence: number; intent: string };
  experiment?: { variant: string; holdout: boolean };
  policy_version?: string;
  cache_ttl?: number;
  bundle_version?: string;
  /** The decision's random seed, an unsigned 64-bit integer as a decimal string. */
  seed?: string;
}

/** Renders one item as an element or an HTML string (escape its fields yourself). */
export type RenderItem = (item: RankedItem, index: number, result: RankResult) => Element | string;

export interface RankOptions {
  limit?: number;
  candidates?: string[];
  context?: Record<string, string | number | boolean>;
  pageType?: string;
  timeout?: number;
  /** Items returned when ranking is not possible. */
  fallback?: RankedItem[];
  /** Element or selector whose children are replaced by the ranked items; left untouched on fallback. */
  container?: Element | string;
  render?: RenderItem;
}

export type EventType = 'page_view' | 'click' | 'dwell' | 'scroll' | 'conversion' | 'impression';

export interface EventFields {
  surface_id?: string;
  content_id?: string;
  request_id?: string;
  props?: Record<string, unknown>;
}

export interface Reward {
  type: 'click' | 'conversion' | 'engagement' | 'dismiss';
  /** In [0, 1]; default 1, or 0 for dismiss. */
  value?: number;
}

export interface FeedbackContext {
  position?: number;
  dwell_time?: number;
  scroll_depth?: number;
}

export interface AuraInstance {
  consent: Consent;
  /** Rank a surface; never rejects. */
  rank(surface: string, options?: RankOptions): Promise<RankResult>;
  render(container: Element | string, result: RankResult, renderItem?: RenderItem): void;
  /** Queue an event; false (and nothing queued) without "analytics" consent. */
  track(type: EventType, fields?: EventFields): boolean;
  /** Send a reward for an item of a decision; false without "personalization" consent. */
  feedback(requestId: string, itemId: string, reward: Reward, context?: FeedbackContext): boolean;
  /** Send everything queued now. */
  flush(): Promise<void>;
  /** Track a page view. */
  page(): boolean;
  /** The visitor's ids, or null before consent. */
  ids(): { anonId: string; sessionId: string } | null;
  /** Remove listeners and timers. */
  destroy(): void;
}

export function init(options?: Options): AuraInstance;
