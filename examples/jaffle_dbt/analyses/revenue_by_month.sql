select
    date_trunc('month', order_date) as order_month,
    count(*) as order_count,
    sum(amount) as revenue
from {{ ref('orders') }}
where status <> 'returned'
group by 1
order by 1
