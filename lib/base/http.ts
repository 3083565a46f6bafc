/** The request and reply shapes the HTTP functions (ingest, report) share with their Lambda handlers. */
export interface HttpRequest {
  body?: string;
  /** Header names lower-cased. */
  headers: Record<string, string | undefined>;
}

export interface HttpResponse {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
}
