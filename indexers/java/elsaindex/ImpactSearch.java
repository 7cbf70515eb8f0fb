package elsaindex;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

import org.apache.lucene.index.Term;
import org.apache.lucene.index.TermStates;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.BoostQuery;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.Query;
import org.apache.lucene.search.ScoreDoc;
import org.apache.lucene.search.TermQuery;
import org.apache.lucene.search.TopDocs;
import org.apache.lucene.search.TopScoreDocCollector;

/**
 * One search of the elsa-index {@code lucene} backend in one call: a weighted disjunction of impact terms in,
 * the top documents out, both as little-endian byte arrays (one copy across JNI each way, no query text to
 * parse and no object per hit).
 *
 * <p>Term ids: {@code 2 * d} is the term {@code p{d}} (positive values of dimension d), {@code 2 * d + 1} is
 * {@code n{d}} (negative values). The term queries are made once, here, for every id below {@code 2 * dims},
 * with their postings looked up in the searcher's index ({@link TermStates}): a search does not look its terms
 * up again. Terms that no document carries are left out of every query (they could not match).
 *
 * <p>Request: int32 {@code n}; {@code n} int32 term ids; {@code n} float32 boosts (finite, non-negative);
 * int32 {@code m}; {@code m} int32 filter term ids. The query is the disjunction of the boosted terms; with
 * {@code m > 0} a document must also carry one of the filter terms (a FILTER clause: it does not score).
 *
 * <p>Reply: int32 {@code count}; {@code count} int32 Lucene docids; {@code count} float32 scores, best
 * first (Lucene's order: score descending, then docid ascending).
 *
 * <p>Thread-safe: the searcher is, and the term queries are immutable.
 */
public final class ImpactSearch {
    private final IndexSearcher searcher;
    private final TermQuery[] terms;

    public ImpactSearch(IndexSearcher searcher, String field, int dims) throws IOException {
        if (dims < 0 || dims > Integer.MAX_VALUE / 2) {
            throw new IllegalArgumentException("dims must be in [0, " + Integer.MAX_VALUE / 2 + "], got " + dims);
        }
        this.searcher = searcher;
        this.terms = new TermQuery[2 * dims];
        for (int id = 0; id < terms.length; id++) {
            Term term = new Term(field, ((id & 1) == 0 ? "p" : "n") + (id >> 1));
            TermStates states = TermStates.build(searcher, term, true);
            terms[id] = states.docFreq() > 0 ? new TermQuery(term, states) : null;
        }
    }

    /**
     * The {@code depth} best documents of a request (see the class notes).
     *
     * @param exhaustive true: count every hit, which makes Lucene score every posting of every term
     *     (window-at-a-time BooleanScorer); false: Lucene's default, which may skip documents that cannot
     *     enter the top {@code depth} once 1,000 hits are counted
     */
    public byte[] search(byte[] request, int depth, boolean exhaustive) throws IOException {
        if (depth < 1) {
            throw new IllegalArgumentException("depth must be >= 1, got " + depth);
        }
        ByteBuffer in = ByteBuffer.wrap(request).order(ByteOrder.LITTLE_ENDIAN);
        int n = count(in, 8);
        int boosts = in.position() + 4 * n;
        BooleanQuery.Builder query = new BooleanQuery.Builder();
        for (int i = 0; i < n; i++) {
            float boost = in.getFloat(boosts + 4 * i);
            if (!(boost >= 0f) || Float.isInfinite(boost)) {
                throw new IllegalArgumentException("boost " + i + " must be finite and >= 0, got " + boost);
            }
            TermQuery term = term(in.getInt());
            if (term != null) {
                query.add(new BoostQuery(term, boost), BooleanClause.Occur.SHOULD);
            }
        }
        in.position(boosts + 4 * n);
        int m = count(in, 4);
        if (m > 0) {
            BooleanQuery.Builder filter = new BooleanQuery.Builder();
            for (int i = 0; i < m; i++) {
                TermQuery term = term(in.getInt());
                if (term != null) {
                    filter.add(term, BooleanClause.Occur.SHOULD);
                }
            }
            query.add(filter.build(), BooleanClause.Occur.FILTER);
        }
        if (in.hasRemaining()) {
            throw new IllegalArgumentException("request has " + in.remaining() + " bytes after its filter terms");
        }
        return reply(top(query.build(), depth, exhaustive));
    }

    private TopDocs top(Query query, int depth, boolean exhaustive) throws IOException {
        if (!exhaustive) {
            return searcher.search(query, depth);
        }
        TopScoreDocCollector collector = TopScoreDocCollector.create(depth, Integer.MAX_VALUE);
        searcher.search(query, collector);
        return collector.topDocs();
    }

    private static byte[] reply(TopDocs top) {
        ScoreDoc[] hits = top.scoreDocs;
        ByteBuffer out = ByteBuffer.allocate(4 + 8 * hits.length).order(ByteOrder.LITTLE_ENDIAN);
        out.putInt(hits.length);
        for (ScoreDoc hit : hits) {
            out.putInt(hit.doc);
        }
        for (ScoreDoc hit : hits) {
            out.putFloat(hit.score);
        }
        return out.array();
    }

    /** A count read from the request, checked against the bytes left ({@code width} bytes per entry). */
    private static int count(ByteBuffer in, int width) {
        if (in.remaining() < 4) {
            throw new IllegalArgumentException("request ends before a count");
        }
        int n = in.getInt();
        if (n < 0 || n > in.remaining() / width) {
            throw new IllegalArgumentException("request count " + n + " does not fit its " + in.remaining()
                    + " remaining bytes");
        }
        return n;
    }

    /** The term query of an id; null for a term that no document carries. */
    private TermQuery term(int id) {
        if (id < 0 || id >= terms.length) {
            throw new IllegalArgumentException("term id " + id + " is outside [0, " + terms.length + ")");
        }
        return terms[id];
    }
}
